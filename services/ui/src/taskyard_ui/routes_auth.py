"""Signing in (an API key checked with /whoami, kept in an http-only cookie) and out."""

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from .api import ApiError, ApiUnauthorized, ApiUnavailable
from .web import COOKIE, render, safe_next, user_api

router = APIRouter()


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "/", expired: bool = False, signed_out: bool = False):
    """The sign-in form."""
    notice = None
    if expired:
        notice = "Your API key was not accepted any more (revoked or unknown). Please sign in again."
    elif signed_out:
        notice = "You are signed out."
    return render(request, "login.html", next=safe_next(next), notice=notice, signed_in=False)


@router.post("/login")
async def login(request: Request, api_key: str = Form(""), next: str = Form("/")) -> Response:
    """Check the key against the API, then keep it in the cookie and go where the user was going."""
    key = api_key.strip()
    target = safe_next(next)

    def again(error: str, status: int) -> Response:
        return render(request, "login.html", status, next=target, error=error, signed_in=False)

    if not key:
        return again("Enter an API key.", 422)
    try:
        await user_api(request, key).whoami()
    except ApiUnauthorized:
        return again("This API key was not accepted: it is unknown or revoked.", 401)
    except ApiUnavailable as err:
        return again(f"The Taskyard API is not reachable ({err.reason}); the key could not be checked.", 503)
    except ApiError as err:
        return again(f"The API refused the sign-in: {err.detail}", err.status)
    resp = RedirectResponse(target, status_code=303)
    # http-only: page scripts never see the key; SameSite=Strict: other sites cannot make the
    # browser send it, which is what protects the UI's POST forms from cross-site requests.
    # No max_age: a session cookie, gone when the browser closes.
    resp.set_cookie(
        COOKIE,
        key,
        httponly=True,
        samesite="strict",
        secure=request.app.state.settings.cookie_secure,
        path="/",
    )
    return resp


@router.api_route("/logout", methods=["GET", "POST"])
async def logout(request: Request) -> Response:
    """Forget the key (the key itself stays valid at the API; revoke it there if it leaked)."""
    resp = RedirectResponse("/login?signed_out=1", status_code=303)
    resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return resp
