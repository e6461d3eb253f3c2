"""The dashboard: server-rendered pages (Jinja, with htmx vendored in `static/`) on the API's own app.

They read the same projections and write through the same ledger commands as the API.
"""

from __future__ import annotations

from litestar.handlers import HTTPRouteHandler
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.router import Router
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from api.dashboard.apps import AppsController, apps_callback
from api.dashboard.audit_page import AuditPageController
from api.dashboard.credentials import CredentialsController
from api.dashboard.people import PeopleController
from api.dashboard.render import STATIC, TEMPLATES
from api.dashboard.session import SessionSigner
from api.dashboard.sign_in import SignInController
from api.dashboard.sso import SsoController

__all__ = ["DASHBOARD_HANDLERS", "SessionSigner", "template_config"]


def _static() -> Router:
    return create_static_files_router(
        path="/static", directories=[STATIC], include_in_schema=False,
        cache_control=None, send_as_attachment=False,
    )


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine)


DASHBOARD_HANDLERS: list[type | Router | HTTPRouteHandler] = [
    SignInController, SsoController, CredentialsController, PeopleController, AppsController, apps_callback,
    AuditPageController, _static(),
]
