"""Loom's own entities, written as specs: ``user`` and ``team``.

A project extends them like any entity it defines (``entities: {user: {fields: {region: ...}}}``):
its fields are added, its labels win; the fields below cannot be redefined. Passwords are not a
field: they live in Loom's credential table, out of reach of every API.
"""

from __future__ import annotations

from .entity import EntitySpec, FieldSpec

__all__ = ["SYSTEM_ENTITIES", "EXTENSIBLE_KEYS"]

SYSTEM_ENTITIES: dict[str, EntitySpec] = {
    "user": EntitySpec(
        label={"en": "User", "zh": "用户"},
        plural="users",
        plural_label={"en": "Users", "zh": "用户"},
        title="username",
        description="Someone who signs in to the CRM.",
        fields={
            "username": FieldSpec(type="string", required=True, unique=True, max_length=64,
                                  pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$",
                                  label={"en": "Username", "zh": "用户名"},
                                  help={"en": "Letters, digits and . _ @ -; used to sign in.",
                                        "zh": "字母、数字及 . _ @ -，用于登录。"}),
            "name": FieldSpec(type="string", max_length=200, label={"en": "Full name", "zh": "姓名"}),
            "email": FieldSpec(type="email", unique=True, label={"en": "Email", "zh": "邮箱"}),
            "active": FieldSpec(type="boolean", required=True, default=True,
                                label={"en": "Active", "zh": "启用"},
                                help={"en": "Disabled users cannot sign in.", "zh": "停用的用户无法登录。"}),
            "locale": FieldSpec(type="string", max_length=16, label={"en": "Language", "zh": "语言"}),
            "teams": FieldSpec(type="refs", to="team", related_name="members",
                               label={"en": "Teams", "zh": "团队"}),
            "last_login_at": FieldSpec(type="datetime", read_only=True,
                                       label={"en": "Last sign-in", "zh": "最近登录"}),
        },
    ),
    "team": EntitySpec(
        label={"en": "Team", "zh": "团队"},
        plural="teams",
        plural_label={"en": "Teams", "zh": "团队"},
        title="name",
        description="A group of users; its manager sees the team's records.",
        fields={
            "name": FieldSpec(type="string", required=True, unique=True, max_length=100,
                              label={"en": "Name", "zh": "名称"}),
            "manager": FieldSpec(type="ref", to="user", on_delete="set_null", related_name="managed_teams",
                                 label={"en": "Manager", "zh": "负责人"}),
        },
    ),
}

#: Keys a project may set when it extends a system entity (besides adding fields).
EXTENSIBLE_KEYS = ("label", "plural_label", "description", "indexes", "unique_together", "rules")
