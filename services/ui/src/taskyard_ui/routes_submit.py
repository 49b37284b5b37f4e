"""The submit form: JSON checked here (and in the browser), everything else by the API, errors per field."""

import json
import re

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from .api import ApiClient, ApiError
from .web import api_for, render

router = APIRouter()

JOB_TYPES = ("noop", "sleep", "shell", "python", "http")
PRIORITIES = ("high", "normal", "low")
FORM_FIELDS = ("type", "payload", "queue", "priority", "labels")
# Shown next to the payload field for the chosen type (and inserted by a button, see submit.js).
EXAMPLES = {
    "noop": None,
    "sleep": {"seconds": 5},
    "shell": {"command": "for i in 1 2 3; do echo step $i; sleep 1; done", "shell": True},
    "python": {"script": "print('hello from python')"},
    "http": {"url": "https://example.org/", "method": "GET"},
}
EMPTY_FORM = {
    "type": "shell",
    "type_other": "",
    "payload": "",
    "queue": "default",
    "priority": "normal",
    "labels": "",
}


def _page(request: Request, form: dict, errors: dict, status_code: int = 200) -> Response:
    examples = {t: ("" if v is None else json.dumps(v, indent=2)) for t, v in EXAMPLES.items()}
    return render(
        request,
        "submit.html",
        status_code,
        active="submit",
        form=form,
        errors=errors,
        job_types=JOB_TYPES,
        priorities=PRIORITIES,
        examples=examples,
    )


@router.get("/submit", response_class=HTMLResponse)
async def submit_form(request: Request, api: ApiClient = Depends(api_for)):
    """The empty submit form (the dependency only makes sure the user is signed in)."""
    return _page(request, dict(EMPTY_FORM), {})


def field_errors(detail: str) -> dict[str, str]:
    """Map the API's 422 detail ("payload: ...; queue: ...") onto form fields; the rest goes to "form"."""
    errors: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in detail.split("; "))):
        name, sep, message = part.partition(": ")
        field = re.split(r"[.\[]", name, maxsplit=1)[0]
        key = field if sep and field in FORM_FIELDS else "form"
        text = message if key != "form" else part
        if key == "payload" and name != "payload":
            text = f"{name}: {message}"  # keep the inner field (payload.command) in the message
        errors[key] = f"{errors[key]}; {text}" if key in errors else text
    return errors or {"form": detail}


def parse_labels(text: str) -> tuple[dict[str, str], str | None]:
    """`name=value` per line (or comma-separated) → dict, or an error naming the bad entry."""
    labels: dict[str, str] = {}
    for raw in re.split(r"[\n,]", text):
        item = raw.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            return {}, f"{item!r} is not name=value"
        labels[name.strip()] = value.strip()
    return labels, None


@router.post("/submit")
async def submit(
    request: Request,
    type: str = Form(""),
    type_other: str = Form(""),
    payload: str = Form(""),
    queue: str = Form("default"),
    priority: str = Form("normal"),
    labels: str = Form(""),
    api: ApiClient = Depends(api_for),
) -> Response:
    """Validate what the browser cannot (JSON), let the API validate the rest, show errors per field."""
    form = {
        "type": type,
        "type_other": type_other,
        "payload": payload,
        "queue": queue,
        "priority": priority,
        "labels": labels,
    }
    errors: dict[str, str] = {}
    job_type = type_other.strip() or type.strip()
    if not job_type:
        errors["type"] = "Type: choose a type or enter a handler name."
    body_payload = None
    if payload.strip():
        try:
            body_payload = json.loads(payload)
        except json.JSONDecodeError as err:
            errors["payload"] = (
                f"Payload is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})."
            )
    label_map, label_error = parse_labels(labels)
    if label_error:
        errors["labels"] = f"Labels: {label_error}; write one name=value per line."
    if errors:
        return _page(request, form, errors, 422)
    body = {"type": job_type, "payload": body_payload, "queue": queue.strip(), "priority": priority}
    if label_map:
        body["labels"] = label_map
    try:
        job = await api.submit(body)
    except ApiError as err:
        if err.status == 422:
            return _page(request, form, field_errors(err.detail), 422)
        if err.status == 413:
            return _page(request, form, {"payload": err.detail}, 413)
        return _page(request, form, {"form": err.detail}, err.status)
    return RedirectResponse(f"/jobs/{job['id']}?done=submitted", status_code=303)
