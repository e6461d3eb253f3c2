"""OpenAPI links: which value of an answer another operation takes (create -> get -> reveal -> delete).

Litestar emits no links, so `add_links` adds them to the generated document after the fact, as
`document_streams` does for the export's media types. Clients read them as documentation; the
stateful fuzzing (schemathesis' state machine) follows them to chain real calls. Parameter names
carry their location (`path.name`, `query.secret`, `header.If-Match`). A link's `requestBody`
gives some fields of the next body; the caller provides the rest (the value to store, say).
"""

from __future__ import annotations

from typing import Any

from litestar.openapi.spec import Link, OpenAPI, OpenAPIResponse

NAME = "$response.body#/name"
VERSION = "$response.body#/version"
ETAG = "$response.header.ETag"
KEY_ID = "$response.body#/key_id"
SSH_KEY_ID = "$response.body#/ssh_key_id"
NEXT_CURSOR = "$response.body#/next_cursor"


def _link(operation_id: str, description: str, parameters: dict[str, str], body: Any = None) -> Link:
    return Link(operation_id=operation_id, description=description, parameters=parameters or None, request_body=body)


def _secret_links(name: str) -> dict[str, Link]:
    """Where a secret's name (and its ETag, when the answer has one) leads."""
    return {
        "GetSecret": _link("GetSecret", "The secret's metadata", {"path.name": name}),
        "RevealSecret": _link("RevealSecret", "Reveal the secret's value", {"path.name": name}),
        "DeleteSecret": _link(
            "DeleteSecret",
            "Delete the secret if it is still at this version",
            {"path.name": name, "header.If-Match": ETAG},
        ),
        "UpdateSecret": _link(
            "UpsertSecret",
            "Give the secret a new value if it is still at this version",
            {"header.If-Match": ETAG},
            {"name": name},
        ),
        "SecretReveals": _link("SecretReveals", "Who revealed the secret", {"query.secret": name}),
        "SecretEvents": _link("QueryAudit", "The secret's events", {"query.secret": name}),
        "SecretVersions": _link("ListSecretVersions", "Every version of the secret", {"path.name": name}),
    }


def _access_links(name: str) -> dict[str, Link]:
    """Where a secret's name leads among its reveal policy, rotation and pool."""
    return {
        "GetPolicy": _link("GetPolicy", "The secret's reveal policy", {"path.name": name}),
        "PutPolicy": _link("PutPolicy", "Restrict who may reveal the secret", {"path.name": name}),
        "GetMembers": _link("GetMembers", "The secret's pool members", {"path.name": name}),
        "PutMember": _link("PutMember", "Add a member to the secret's pool", {"path.name": name}),
        "PutRotation": _link("PutRotation", "Rotate the secret automatically", {"path.name": name}),
    }


MEMBER = "$response.body#/member"


def _member_links(name: str, member: str) -> dict[str, Link]:
    """Where a pool member (the secret's name and the member's) leads."""
    at = {"path.name": name, "path.member": member}
    return {
        "DisableMember": _link("DisableMember", "Disable the member", at),
        "EnableMember": _link("EnableMember", "Enable the member", at),
        "DeleteMember": _link("DeleteMember", "Remove the member", at),
        "GetMembers": _link("GetMembers", "The pool's members", {"path.name": name}),
    }


MEMBER_ID = "$response.body#/member_id"


def _app_links(name: str) -> dict[str, Link]:
    """Where a connected app's name leads."""
    return {
        "GetConnectedApp": _link("GetConnectedApp", "The app's state", {"path.name": name}),
        "ConnectedAppToken": _link("ConnectedAppToken", "A valid access token of the app (recorded)",
                                   {"path.name": name}),
        "DisconnectApp": _link("DisconnectApp", "Disconnect the app: its tokens are destroyed", {"path.name": name}),
    }


def _version_exposure(description: str) -> Link:
    return _link("VersionExposure", description, {"query.secret": NAME, "query.version": VERSION})


# operationId -> status -> link name -> link
LINKS: dict[str, dict[str, dict[str, Link]]] = {
    "UpsertSecret": {
        status: {**_secret_links(NAME), "VersionExposure": _version_exposure("Every reveal of this version"),
                 **_access_links(NAME)}
        for status in ("200", "201")
    },
    "GetSecret": {"200": _secret_links("$request.path.name")},
    "RevealSecret": {
        "200": {
            "GetSecret": _link("GetSecret", "The revealed secret's metadata", {"path.name": NAME}),
            "VersionExposure": _version_exposure("Every reveal of the revealed version"),
        }
    },
    "DeleteSecret": {
        "204": {
            "GetSecret": _link("GetSecret", "The deleted secret: not found", {"path.name": "$request.path.name"}),
            "RecreateSecret": _link("UpsertSecret", "Create the secret again", {}, {"name": "$request.path.name"}),
            "RestoreSecret": _link("RestoreSecret", "Bring the deleted secret back as it was",
                                   {"path.name": "$request.path.name"}),
        }
    },
    "RestoreSecret": {"200": _secret_links(NAME)},
    "RollbackSecret": {"200": _secret_links(NAME)},
    "ListSecrets": {
        "200": {
            "GetSecret": _link(
                "GetSecret", "The first secret of the page", {"path.name": "$response.body#/secrets/0/name"}
            ),
            "NextPage": _link(
                "ListSecrets", "The next page", {"query.cursor": NEXT_CURSOR, "query.limit": "$request.query.limit"}
            ),
        }
    },
    "CreateApiKey": {
        "201": {
            "RevokeApiKey": _link("RevokeApiKey", "Revoke the new key", {"path.key_id": KEY_ID}),
            "KeyEvents": _link("QueryAudit", "The events made with the new key", {"query.actor": KEY_ID}),
        }
    },
    "RevokeApiKey": {
        "204": {
            "RevokeAgain": _link("RevokeApiKey", "Revoke it again: not found", {"path.key_id": "$request.path.key_id"}),
        }
    },
    "AddSshKey": {
        "201": {
            "RemoveSshKey": _link("RemoveSshKey", "Remove the new SSH key", {"path.ssh_key_id": SSH_KEY_ID}),
        }
    },
    "RemoveSshKey": {
        "204": {
            "RemoveAgain": _link("RemoveSshKey", "Remove it again: not found",
                                 {"path.ssh_key_id": "$request.path.ssh_key_id"}),
        }
    },
    "CreateOrg": {
        "201": {
            "CreateAgain": _link(
                "CreateOrg", "Create the same org again: a conflict", {}, {"org": "$response.body#/org"}
            ),
            "RevokeFirstKey": _link("RevokeApiKey", "Revoke the org's first key", {"path.key_id": KEY_ID}),
        }
    },
    "QueryAudit": {
        "200": {
            "NextPage": _link(
                "QueryAudit", "The next page", {"query.cursor": NEXT_CURSOR, "query.order": "$request.query.order"}
            ),
        }
    },
    # A secret's reveal policy, rotation and pool (reached from UpsertSecret, above).
    "GetPolicy": {"200": {"PutPolicy": _link("PutPolicy", "Change the policy", {"path.name": "$request.path.name"})}},
    "GetMembers": {
        "200": {
            "PutMember": _link("PutMember", "Add a member to the pool", {"path.name": "$request.path.name"}),
            "PutPool": _link("PutPool", "Choose how reveals pick a member", {"path.name": "$request.path.name"}),
        }
    },
    "GetRotation": {
        "200": {
            "RotateSecret": _link("RotateSecret", "Rotate the secret now", {"path.name": "$request.path.name"}),
            "PutRotation": _link("PutRotation", "Change the rotation policy", {"path.name": "$request.path.name"}),
        }
    },
    "PutPolicy": {
        "200": {
            "GetPolicy": _link("GetPolicy", "The policy just set", {"path.name": "$request.path.name"}),
            "WhoCouldReveal": _link("WhoCouldReveal", "The keys the policy lets reveal the secret",
                                    {"query.secret": "$request.path.name"}),
        }
    },
    "PutRotation": {
        "200": {
            "GetRotation": _link("GetRotation", "The rotation policy just set", {"path.name": "$request.path.name"}),
            "RotateSecret": _link("RotateSecret", "Rotate the secret now", {"path.name": "$request.path.name"}),
            "DeleteRotation": _link("DeleteRotation", "Remove the rotation policy",
                                    {"path.name": "$request.path.name"}),
        }
    },
    "DeleteRotation": {
        "204": {
            "GetRotation": _link("GetRotation", "The removed policy: not found", {"path.name": "$request.path.name"}),
            "RotateSecret": _link("RotateSecret", "Rotate without a policy: a conflict",
                                  {"path.name": "$request.path.name"}),
        }
    },
    "PutMember": {status: _member_links("$request.path.name", MEMBER) for status in ("200", "201")},
    "DisableMember": {"200": _member_links("$request.path.name", MEMBER)},
    "EnableMember": {"200": _member_links("$request.path.name", MEMBER)},
    "DeleteMember": {
        "204": {
            "DeleteAgain": _link("DeleteMember", "Remove it again: not found",
                                 {"path.name": "$request.path.name", "path.member": "$request.path.member"}),
        }
    },
    # Connected apps: connect -> read / token / disconnect -> read again (404).
    "ConnectApp": {
        "201": {
            **_app_links(NAME),
            "ConnectAgain": _link("ConnectApp", "Connect the same name again while it is healthy: a conflict", {},
                                  {"name": NAME}),
        }
    },
    "GetConnectedApp": {"200": _app_links("$request.path.name")},
    "ConnectedAppToken": {
        "200": {
            "GetConnectedApp": _link("GetConnectedApp", "The app's state after the token (refreshed or not)",
                                     {"path.name": NAME}),
            "TokenAgain": _link("ConnectedAppToken", "A token again (the same one until it is due)",
                                {"path.name": NAME}),
        }
    },
    "DisconnectApp": {
        "204": {
            "GetConnectedApp": _link("GetConnectedApp", "The disconnected app: not found",
                                     {"path.name": "$request.path.name"}),
            "DisconnectAgain": _link("DisconnectApp", "Disconnect it again: not found",
                                     {"path.name": "$request.path.name"}),
            "ReconnectApp": _link("ConnectApp", "Connect the name again", {}, {"name": "$request.path.name"}),
        }
    },
    "ListConnectedApps": {
        "200": {
            "GetConnectedApp": _link("GetConnectedApp", "The first app of the list",
                                     {"path.name": "$response.body#/apps/0/name"}),
            "ConnectApp": _link("ConnectApp", "Connect another app (a listed name is a conflict while connected)", {}),
        }
    },
    # The org's single sign-on settings and its people.
    "SetSso": {
        "200": {
            "GetSso": _link("GetSso", "The settings just set", {}),
            "RemoveSso": _link("RemoveSso", "Stop single sign-on", {}),
        }
    },
    "RemoveSso": {
        "204": {
            "GetSso": _link("GetSso", "The removed settings: not found", {}),
            "RemoveAgain": _link("RemoveSso", "Remove them again: not found", {}),
        }
    },
    "ListMembers": {
        "200": {
            "ChangeMemberRole": _link("ChangeMemberRole", "Change the first person's role",
                                      {"path.member_id": "$response.body#/members/0/member_id"}),
            "RemoveMember": _link("RemoveMember", "Remove the first person",
                                  {"path.member_id": "$response.body#/members/0/member_id"}),
            "SetSso": _link("SetSso", "Set the provider people sign in with", {}),
        }
    },
    "ChangeMemberRole": {
        "200": {
            "RemoveMember": _link("RemoveMember", "Remove the person", {"path.member_id": MEMBER_ID}),
        }
    },
    "RemoveMember": {
        "204": {
            "RemoveAgain": _link("RemoveMember", "Remove them again: not found",
                                 {"path.member_id": "$request.path.member_id"}),
            "ChangeRemoved": _link("ChangeMemberRole", "Change a removed person's role: not found",
                                   {"path.member_id": "$request.path.member_id"}),
        }
    },
}


def add_links(openapi: OpenAPI) -> None:
    """Add `LINKS` to the app's OpenAPI document; every operation they name must exist."""
    operations = {
        operation.operation_id: operation
        for item in (openapi.paths or {}).values()
        for operation in (item.get, item.put, item.post, item.delete, item.patch)
        if operation is not None
    }
    for source, by_status in LINKS.items():
        responses = operations[source].responses or {}
        for status, links in by_status.items():
            answer = responses[status]
            assert isinstance(answer, OpenAPIResponse), (source, status)
            assert all(link.operation_id in operations for link in links.values()), (source, status)
            answer.links = {**(answer.links or {}), **links}
