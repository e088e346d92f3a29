"""The admin app's own words, per locale. Labels, options, help and rule messages come from the config;
these are the words around them. A locale missing here reads English; a project adds or changes words
with the ``loom_jinja_environment`` hook (``env.globals["messages"]``)."""

from __future__ import annotations

__all__ = ["MESSAGES", "LANGUAGE_NAMES", "translator"]

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
        "more_filters": "More filters", "find": "Find", "active_filters": "Active filters",
        "remove_filter": "Remove filter", "filter_problem": "Some filters could not be used:",
        "no_matches": "No records match these filters.", "is_empty": "is empty", "is_not_empty": "is not empty",
        "no_selection": "Select at least one record first.", "bulk_done": "{n} done.", "bulk_failed": "{n} not done:",
        "select": "Select", "pagination": "Pages",
        "from": "from", "to": "to", "contains": "contains", "any": "any", "yes": "Yes", "no": "No",
        "more": "More", "system": "System", "by": "by", "changed": "changed", "created_by": "created",
        "deleted": "deleted", "transition": "moved", "choose": "Choose…", "no_results": "Nothing found.",
        "stale": "This page is out of date; reload it.", "version": "Version", "skip": "Skip to content",
        "menu": "Menu", "signed_in_as": "Signed in as", "pages": "More pages",
        "view_all": "View all", "search_results": "Search results", "search_more": "More results",
        "matched_in": "in", "their_value": "Their value", "your_value": "Your value", "field": "Field",
        "changed_by_other": "Changed by someone else", "needs_fields": "Fill in to continue:",
        "pick_record": "Type to search, then pick a record", "remove": "Remove", "add": "Add",
        "show_more": "Show more", "empty_value": "(empty)",
        "error": "Something went wrong.", "forbidden_form": "This form is out of date or did not come from this "
        "site. Reload the page and try again.",
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
        "more_filters": "更多筛选", "find": "查找", "active_filters": "当前筛选",
        "remove_filter": "移除筛选", "filter_problem": "以下筛选条件无法使用：",
        "no_matches": "没有符合筛选条件的记录。", "is_empty": "为空", "is_not_empty": "不为空",
        "no_selection": "请先选择至少一条记录。", "bulk_done": "{n} 条已完成。", "bulk_failed": "{n} 条未完成：",
        "select": "选择", "pagination": "分页",
        "from": "从", "to": "到", "contains": "包含", "any": "全部", "yes": "是", "no": "否",
        "more": "更多", "system": "系统", "by": "操作人", "changed": "修改了", "created_by": "创建了",
        "deleted": "删除了", "transition": "流转", "choose": "请选择…", "no_results": "没有找到。",
        "stale": "页面已过期，请刷新。", "version": "版本", "skip": "跳到正文",
        "menu": "菜单", "signed_in_as": "当前用户", "pages": "更多页面",
        "view_all": "查看全部", "search_results": "搜索结果", "search_more": "更多结果",
        "matched_in": "匹配于", "their_value": "对方的值", "your_value": "您的值", "field": "字段",
        "changed_by_other": "他人修改的内容", "needs_fields": "请先填写：",
        "pick_record": "输入以搜索，然后选择一条记录", "remove": "移除", "add": "添加",
        "show_more": "显示更多", "empty_value": "（空）",
        "error": "出错了。", "forbidden_form": "表单已过期或并非来自本站。请刷新页面后重试。",
    },
}
#: Each locale's name in its own language, for the language switch.
LANGUAGE_NAMES: dict[str, str] = {
    "en": "English", "zh": "中文", "zh-Hans": "简体中文", "zh-Hant": "繁體中文", "de": "Deutsch", "fr": "Français",
    "es": "Español", "ja": "日本語", "ko": "한국어", "pt": "Português", "it": "Italiano", "ru": "Русский",
}


def translator(locale: str):
    """``t(key)``: the word for ``key`` in ``locale``, else in English, else the key itself."""
    words = MESSAGES.get(locale) or MESSAGES.get(locale.split("-")[0]) or {}
    english = MESSAGES["en"]

    def t(key: str) -> str:
        return words.get(key) or english.get(key) or key
    return t
