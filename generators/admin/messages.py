"""The admin app's own words, per locale. Labels, options, help and rule messages come from the config;
these are the words around them. A locale missing here reads English; a project adds or changes words
with the ``loom_jinja_environment`` hook (``env.globals["messages"]``)."""

from __future__ import annotations

__all__ = ["MESSAGES", "translator"]

MESSAGES: dict[str, dict[str, str]] = {
    "en": {
        "sign_in": "Sign in", "sign_out": "Sign out", "sign_out_everywhere": "Sign out everywhere",
        "username": "Username", "password": "Password", "home": "Home", "search": "Search",
        "search_placeholder": "Search records…", "new": "New", "edit": "Edit", "save": "Save",
        "cancel": "Cancel", "delete": "Delete", "records": "records", "no_records": "No records yet.",
        "next_page": "Next page", "first_page": "First page", "filter": "Filter", "clear": "Clear",
        "required": "required", "history": "Activity", "related": "Related", "actions": "Actions",
        "language": "Language", "fix_errors": "Please correct the fields marked below.",
        "conflict": "Someone else changed this record while you were editing it. Their version is shown "
                    "below; your changes are kept in the form. Save again to overwrite.",
        "not_allowed": "You may not do this.", "not_found": "This record does not exist, or you may not see it.",
        "saved": "Saved.", "created": "Created.", "wrong_login": "Wrong username or password.",
        "too_many": "Too many failed sign-ins. Wait a few minutes and try again.",
        "select_all": "Select all", "with_selected": "With the selected records", "apply": "Apply",
        "saved_views": "Saved views", "save_view": "Save this view", "view_name": "View name",
        "from": "from", "to": "to", "contains": "contains", "any": "any", "yes": "Yes", "no": "No",
        "more": "More", "system": "System", "by": "by", "changed": "changed", "created_by": "created",
        "deleted": "deleted", "transition": "moved", "choose": "Choose…", "no_results": "Nothing found.",
        "stale": "This page is out of date; reload it.", "version": "Version", "skip": "Skip to content",
    },
    "zh": {
        "sign_in": "登录", "sign_out": "退出", "sign_out_everywhere": "退出所有设备",
        "username": "用户名", "password": "密码", "home": "首页", "search": "搜索",
        "search_placeholder": "搜索记录…", "new": "新建", "edit": "编辑", "save": "保存",
        "cancel": "取消", "delete": "删除", "records": "条记录", "no_records": "暂无记录。",
        "next_page": "下一页", "first_page": "第一页", "filter": "筛选", "clear": "清除",
        "required": "必填", "history": "动态", "related": "相关记录", "actions": "操作",
        "language": "语言", "fix_errors": "请更正下方标出的字段。",
        "conflict": "在您编辑期间，其他人修改了这条记录。下方显示的是对方的版本；您的修改仍保留在表单中。再次保存将覆盖。",
        "not_allowed": "您无权执行此操作。", "not_found": "记录不存在，或您无权查看。",
        "saved": "已保存。", "created": "已创建。", "wrong_login": "用户名或密码错误。",
        "too_many": "登录失败次数过多，请稍后再试。",
        "select_all": "全选", "with_selected": "对所选记录", "apply": "执行",
        "saved_views": "已保存的视图", "save_view": "保存当前视图", "view_name": "视图名称",
        "from": "从", "to": "到", "contains": "包含", "any": "全部", "yes": "是", "no": "否",
        "more": "更多", "system": "系统", "by": "操作人", "changed": "修改了", "created_by": "创建了",
        "deleted": "删除了", "transition": "流转", "choose": "请选择…", "no_results": "没有找到。",
        "stale": "页面已过期，请刷新。", "version": "版本", "skip": "跳到正文",
    },
}


def translator(locale: str):
    """``t(key)``: the word for ``key`` in ``locale``, else in English, else the key itself."""
    words = MESSAGES.get(locale) or MESSAGES.get(locale.split("-")[0]) or {}
    english = MESSAGES["en"]

    def t(key: str) -> str:
        return words.get(key) or english.get(key) or key
    return t
