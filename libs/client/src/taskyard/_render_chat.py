"""Pure text helpers for `taskyard chat`: one line per thread message, and the prompt for a question."""

from typing import Any


def clock(iso: Any) -> str:
    """ "2026-12-06T02:31:07.123Z" -> "02:31:07" ("--:--:--" when absent)."""
    if not isinstance(iso, str) or "T" not in iso:
        return "--:--:--"
    return iso.split("T", 1)[1][:8]


def message_line(m: dict[str, Any], asked: set[str]) -> str:
    """`02:31:07 converse (job) asks: Which library?` — a job's question says `asks`, an answer
    says `answers`; other lines are the author and the text. `asked` is the checkpoint ids whose
    question was already printed (answers are the second message naming one)."""
    who = f"{m.get('author')} ({m.get('author_kind')})"
    ck = m.get("checkpoint_id")
    verb = ""
    if ck:
        verb = " answers" if ck in asked else " asks"
        asked.add(ck)
    text = str(m.get("text", "")).replace("\n", "\n    ")
    return f"{clock(m.get('created_at'))} {who}{verb}: {text}"


def question_prompt(q: dict[str, Any]) -> str:
    """What to type now: the open question, its choices, who may answer."""
    choices = q.get("choices")
    extra = f"; one of: {', '.join(str(c) for c in choices)}" if choices else ""
    who = ", ".join(str(a) for a in q.get("approvers") or [])
    return f"> waiting for an answer to {q.get('name')!r}{extra} (may answer: {who}); type it and press Enter"
