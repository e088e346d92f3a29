"""Demo data for the Loom Sales example: 300 accounts, 600 contacts, 900 activities, 120 leads,
200 opportunities across the pipeline and 80 service cases.

Deterministic (one ``random.Random(20261123)``), stdlib only. Loom calls ``seed(api)``, where
``api.create(entity, data)`` validates and stores one record and returns it with its ``"id"``.
About half the accounts are Chinese companies with Chinese contacts, half English-speaking.
"""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone

N_ACCOUNTS, N_CONTACTS, N_ACTIVITIES = 300, 600, 900
N_LEADS, N_OPPORTUNITIES, N_TICKETS = 120, 200, 80
#: stage -> (share of opportunities, probability the pipeline's transitions set)
STAGES = {"prospecting": (20, 10), "qualification": (20, 20), "proposal": (18, 50), "negotiation": (12, 75),
          "won": (18, 100), "lost": (12, 0)}
DEALS = {"zh": ["年度框架协议", "设备采购项目", "软件系统升级", "物流外包服务", "培训服务"],
         "en": ["Annual framework agreement", "Fleet renewal", "Platform upgrade", "Logistics outsourcing",
                "Training programme"]}
CASES = {"zh": ["发票金额有误", "设备无法启动", "登录失败", "交付延迟", "申请退货"],
         "en": ["Invoice amount wrong", "Device does not start", "Cannot sign in", "Late delivery",
                "Return request"]}
CST = timezone(timedelta(hours=8))  # the app's time zone, Asia/Shanghai
TODAY = datetime(2026, 3, 1, tzinfo=CST)  # fixed "now" so done/open activities are stable

# Phone templates: every N becomes a random digit, spaces are dropped (E.164).
# (city, area code, region)
ZH_CITIES = [
    ("上海", "21", "east"), ("北京", "10", "north"), ("深圳", "755", "south"), ("广州", "20", "south"),
    ("杭州", "571", "east"), ("成都", "28", "west"), ("南京", "25", "east"), ("天津", "22", "north"),
    ("重庆", "23", "west"), ("西安", "29", "west"),
]
ZH_BRAND = [  # (hanzi, pinyin): two make a brand, e.g. 明辉 minghui
    ("明", "ming"), ("辉", "hui"), ("华", "hua"), ("信", "xin"), ("达", "da"), ("泰", "tai"),
    ("恒", "heng"), ("瑞", "rui"), ("宏", "hong"), ("嘉", "jia"), ("盛", "sheng"), ("源", "yuan"),
    ("康", "kang"), ("博", "bo"), ("金", "jin"), ("远", "yuan"), ("安", "an"), ("创", "chuang"),
]
ZH_TRADE = [  # (word in the name, domain part, industry)
    ("贸易", "trade", "retail"), ("商贸", "commerce", "retail"), ("科技", "tech", "technology"),
    ("软件", "soft", "technology"), ("机械", "machinery", "manufacturing"),
    ("电子", "electronics", "manufacturing"), ("物流", "logistics", "logistics"),
    ("医疗器械", "medical", "healthcare"), ("教育科技", "edu", "education"),
    ("新能源", "energy", "energy"), ("投资", "capital", "finance"),
]
ZH_SURNAMES = [
    ("王", "wang"), ("李", "li"), ("张", "zhang"), ("刘", "liu"), ("陈", "chen"), ("杨", "yang"),
    ("黄", "huang"), ("赵", "zhao"), ("吴", "wu"), ("周", "zhou"), ("徐", "xu"), ("孙", "sun"),
    ("马", "ma"), ("朱", "zhu"), ("胡", "hu"), ("郭", "guo"), ("何", "he"), ("林", "lin"),
]
ZH_GIVEN = [
    ("伟", "wei"), ("芳", "fang"), ("娜", "na"), ("敏", "min"), ("静", "jing"), ("强", "qiang"),
    ("磊", "lei"), ("军", "jun"), ("洋", "yang"), ("艳", "yan"), ("杰", "jie"), ("涛", "tao"),
    ("秀英", "xiuying"), ("建国", "jianguo"), ("晓东", "xiaodong"), ("雪梅", "xuemei"),
    ("志强", "zhiqiang"), ("佳怡", "jiayi"), ("子涵", "zihan"), ("浩然", "haoran"),
]
ZH_MOBILE_PREFIXES = ["138", "139", "186", "135", "137", "150", "158", "188"]
ZH_TITLES = ["总经理", "销售总监", "采购经理", "财务经理", "技术总监", "市场专员", "行政主管", "项目经理"]

# (city, company suffix, office phone template, mobile template)
EN_CITIES = [
    ("London", "Ltd", "+44 20 7946 0NNN", "+44 7400 NNNNNN"),
    ("Manchester", "plc", "+44 161 496 0NNN", "+44 7400 NNNNNN"),
    ("Berlin", "GmbH", "+49 30 2NNN NNNN", "+49 151 NNNN NNNN"),
    ("New York", "Inc.", "+1 212 555 01NN", "+1 917 555 01NN"),
    ("San Francisco", "LLC", "+1 415 555 01NN", "+1 415 555 01NN"),
    ("Toronto", "Inc.", "+1 416 555 01NN", "+1 647 555 01NN"),
    ("Sydney", "Pty Ltd", "+61 2 5550 NNNN", "+61 491 570 NNN"),
    ("Singapore", "Pte. Ltd.", "+65 62NN NNNN", "+65 91NN NNNN"),
]
EN_PREFIXES = [
    "Northwind", "Blue Harbor", "Summit", "Redwood", "Silverline", "Crescent", "Ironbridge",
    "Evergreen", "Brightwater", "Oakfield", "Highland", "Pioneer", "Granite", "Maple", "Atlas",
    "Cobalt", "Horizon", "Sterling", "Falcon", "Beacon",
]
EN_TRADE = [  # (word in the name, industry)
    ("Logistics", "logistics"), ("Freight", "logistics"), ("Systems", "technology"),
    ("Software", "technology"), ("Foods", "retail"), ("Retail", "retail"),
    ("Manufacturing", "manufacturing"), ("Health", "healthcare"), ("Learning", "education"),
    ("Energy", "energy"), ("Capital", "finance"),
]
EN_FIRST = [
    "James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "David",
    "Elizabeth", "William", "Susan", "Thomas", "Sarah", "Daniel", "Emma", "Oliver", "Sophie",
    "Lukas", "Hannah", "Liam", "Chloe",
]
EN_LAST = [
    "Smith", "Johnson", "Brown", "Taylor", "Wilson", "Davies", "Evans", "Walker", "Wright",
    "Thompson", "Miller", "Anderson", "Clarke", "Müller", "Schmidt", "Fischer", "Tremblay", "Nguyen",
]
EN_TITLES = [
    "CEO", "Sales Director", "Purchasing Manager", "CFO", "CTO", "Marketing Specialist",
    "Office Manager", "Project Manager",
]
DESCRIPTIONS = {
    "zh": [
        "重点客户，年度框架协议洽谈中。", "通过展会认识，对新产品线感兴趣。", "老客户转介绍。",
        "预算审批周期较长。",
    ],
    "en": ["Key account; annual framework agreement under negotiation.", "Met at a trade fair.",
           "Referred by an existing customer.", "Long budget approval cycle."],
}
SUBJECTS = {
    ("zh", "call"): ["电话回访", "确认报价细节", "跟进付款进度", "预约上门拜访"],
    ("zh", "meeting"): ["季度业务回顾会议", "产品演示", "合同条款谈判", "现场需求调研"],
    ("zh", "email"): ["发送报价单", "发送产品资料", "会议纪要", "节日问候"],
    ("zh", "note"): ["客户组织架构变动", "竞争对手情况", "采购流程说明", "内部备忘"],
    ("en", "call"): ["Follow-up call", "Confirm pricing details", "Chase overdue invoice", "Book site visit"],
    ("en", "meeting"): ["Quarterly business review", "Product demo", "Contract negotiation", "Workshop"],
    ("en", "email"): ["Send quotation", "Send product brochure", "Meeting minutes", "Season's greetings"],
    ("en", "note"): ["Client reorganisation", "Competitor landscape", "Procurement process", "Internal memo"],
}
NOTES = {
    "zh": ["客户反馈积极，下周再次沟通。", "需要技术团队支持。", "对价格比较敏感。"],
    "en": ["Positive feedback; follow up next week.", "Needs support from engineering.", "Price-sensitive."],
}

rng = random.Random(20261123)


def maybe(value, p: float = 0.8):
    """``value`` with probability ``p``, else None (optional fields left empty)."""
    return value if rng.random() < p else None


def fill(template: str) -> str:
    """Replace each N with a random digit and drop spaces: "+1 212 555 01NN" -> "+12125550142"."""
    return "".join(str(rng.randint(0, 9)) if c == "N" else c for c in template if c != " ")


def fresh(make, used_domains: set) -> tuple:
    """Call ``make()`` until its (name, domain, industry) has a domain not used yet."""
    while (value := make())[1] in used_domains:
        pass
    used_domains.add(value[1])
    return value


def zh_company(used: set) -> dict:
    city, area, region = rng.choice(ZH_CITIES)

    def make():
        (b1, p1), (b2, p2) = rng.sample(ZH_BRAND, 2)
        word, slug, industry = rng.choice(ZH_TRADE)
        return f"{city}{b1}{b2}{word}有限公司", f"{p1}{p2}-{slug}.example.com", industry

    name, domain, industry = fresh(make, used)
    return dict(name=name, domain=domain, industry=industry, city=city, region=region, lang="zh",
                phone=f"+86{area}{rng.randint(60000000, 79999999)}")


def en_company(used: set) -> dict:
    city, suffix, office, _ = rng.choice(EN_CITIES)

    def make():
        prefix, (word, industry) = rng.choice(EN_PREFIXES), rng.choice(EN_TRADE)
        slug = f"{prefix}-{word}".lower().replace(" ", "")
        return f"{prefix} {word} {suffix}", f"{slug}.example.com", industry

    name, domain, industry = fresh(make, used)
    return dict(name=name, domain=domain, industry=industry, city=city, region="overseas", lang="en",
                phone=fill(office))


def make_account(i: int, used: set) -> tuple[dict, dict]:
    """Return (data for api.create, facts the contacts need)."""
    c = zh_company(used) if i % 2 == 0 else en_company(used)
    revenue = int(10 ** rng.uniform(5.5, 9.5)) // 1000 * 1000  # CNY 0.3m .. 3bn, round thousands
    data = {
        "name": c["name"],
        "industry": c["industry"],
        "type": rng.choices(["prospect", "customer", "partner"], [50, 35, 15])[0],
        "website": maybe(f"https://{c['domain']}", 0.9),
        "phone": maybe(c["phone"], 0.9),
        "email": maybe(f"{'info' if c['lang'] == 'en' else 'service'}@{c['domain']}", 0.7),
        "city": c["city"],
        "region": c["region"],
        "annual_revenue": maybe(f"{revenue}.00", 0.75),
        "employees": maybe(int(10 ** rng.uniform(0.5, 4.5)), 0.85),
        "rating": maybe(rng.choice(["hot", "warm", "cold"]), 0.8),
        "description": maybe(rng.choice(DESCRIPTIONS[c["lang"]]), 0.4),
    }
    return data, c


def make_contact(company: dict | None, account_id: int | None, used_emails: set) -> dict:
    lang = company["lang"] if company else rng.choice(["en", "zh"])
    domain = company["domain"] if company else "mail.example.net"
    if lang == "zh":
        (last, last_py), (first, first_py) = rng.choice(ZH_SURNAMES), rng.choice(ZH_GIVEN)
        title, mobile = rng.choice(ZH_TITLES), f"+86{rng.choice(ZH_MOBILE_PREFIXES)}{fill('NNNNNNNN')}"
        city = company["city"] if company else rng.choice(ZH_CITIES)[0]
    else:
        first, last = rng.choice(EN_FIRST), rng.choice(EN_LAST)
        first_py, last_py = first.lower(), last.lower().replace("ü", "ue")
        title = rng.choice(EN_TITLES)
        city_row = next(r for r in EN_CITIES if r[0] == company["city"]) if company else rng.choice(EN_CITIES)
        city, mobile = city_row[0], fill(city_row[3])
    local = f"{first_py}.{last_py}"
    email = f"{local}@{domain}"
    n = 2
    while email in used_emails:  # two Wei Wangs at one company: wei.wang2@...
        email, n = f"{local}{n}@{domain}", n + 1
    used_emails.add(email)
    return {
        "first_name": first,
        "last_name": last,
        "account": account_id,
        "title": maybe(title, 0.85),
        "email": maybe(email, 0.9),
        "phone": maybe(company["phone"] if company else None, 0.6),
        "mobile": maybe(mobile, 0.7),
        "city": maybe(city, 0.9),
        "preferred_language": lang,
        "do_not_call": rng.random() < 0.05,
        "birthday": maybe((date(1960, 1, 1) + timedelta(days=rng.randint(0, 40 * 365))).isoformat(), 0.4),
    }


def make_activity(account_id: int | None, contact_id: int | None, lang: str) -> dict:
    kind = rng.choices(["call", "meeting", "email", "note"], [40, 25, 25, 10])[0]
    day = TODAY + timedelta(days=rng.randint(-120, 60))
    due = day.replace(hour=rng.randint(9, 17), minute=rng.choice([0, 15, 30, 45]))
    minutes = {"call": (5, 60), "meeting": (30, 180)}.get(kind)
    return {
        "subject": rng.choice(SUBJECTS[lang, kind]),
        "kind": kind,
        "account": account_id,
        "contact": contact_id,
        "due_at": due.isoformat(),
        "done": rng.random() < (0.85 if due < TODAY else 0.05),
        "notes": maybe(rng.choice(NOTES[lang]), 0.35),
        "duration_minutes": rng.randint(*minutes) if minutes else None,
    }


#: Demo sign-ins (this example only: a real project never ships passwords). `make run` prints them.
DEMO_PASSWORD = "loom-demo-2026"
DEMO_USERS = [  # username, full name, email, team, role, region
    ("admin", "Ada Admin", "admin@loom-sales.example.com", None, "admin", None),
    ("li.manager", "李娜", "li.na@loom-sales.example.com", "east", "sales_manager", "east"),
    ("zhang.rep", "张伟", "zhang.wei@loom-sales.example.com", "east", "sales_rep", "east"),
    ("smith.rep", "John Smith", "john.smith@loom-sales.example.com", "overseas", "sales_rep", "overseas"),
    ("wu.marketing", "吴芳", "wu.fang@loom-sales.example.com", None, "marketing", None),
    ("chen.service", "陈杰", "chen.jie@loom-sales.example.com", None, "service_agent", None),
    ("wang.finance", "王静", "wang.jing@loom-sales.example.com", None, "finance", None),
]
#: Who owns the accounts of a region (and their contacts and activities); the rest go to the manager.
REGION_OWNERS = {"east": "zhang.rep", "overseas": "smith.rep"}


def seed_users(users) -> None:
    for username, name, email, _, role, region in DEMO_USERS:
        users.create(username, DEMO_PASSWORD, name=name, email=email, roles=[role],
                     **({"region": region} if region else {}))
    users.create_team("east", manager="li.manager")
    users.create_team("overseas", manager="li.manager")
    for username, _, _, team, _, _ in DEMO_USERS:
        if team:
            users.add_member(team, username)


def seed(api) -> None:
    """Create the demo records through ``api.create(entity, data) -> record with "id"``."""
    rng.seed(20261123)  # same data on every call, even twice in one process
    seed_users(api.users)
    used_domains: set = set()
    accounts = []  # (id, company facts)
    for i in range(N_ACCOUNTS):
        data, company = make_account(i, used_domains)
        owner = REGION_OWNERS.get(data["region"], "li.manager")
        accounts.append((api.create("account", data, owner=owner)["id"], {**company, "owner": owner}))

    used_emails: set = set()
    contacts = []  # (id, account id or None, language, owner)
    for _ in range(N_CONTACTS):
        account_id, company = rng.choice(accounts) if rng.random() < 0.95 else (None, None)
        data = make_contact(company, account_id, used_emails)
        owner = company["owner"] if company else "li.manager"
        contacts.append((api.create("contact", data, owner=owner)["id"], account_id, data["preferred_language"],
                         owner))

    for _ in range(N_ACTIVITIES):
        if rng.random() < 0.8:  # most activities involve a person
            contact_id, account_id, lang, owner = rng.choice(contacts)
        else:
            (account_id, company), contact_id = rng.choice(accounts), None
            lang, owner = company["lang"], company["owner"]
        api.create("activity", make_activity(account_id, contact_id, lang), owner=owner)

    seed_process(api, accounts, contacts)


def seed_process(api, accounts: list, contacts: list) -> None:
    """Leads, opportunities at every stage of the pipeline and service cases (a seed may start records in
    any state, as data moved from an old system does; from here on they move by transitions)."""
    for i in range(N_LEADS):
        company = zh_company(set()) if i % 2 == 0 else en_company(set())
        first, last = (rng.choice(ZH_GIVEN)[0], rng.choice(ZH_SURNAMES)[0]) if company["lang"] == "zh" \
            else (rng.choice(EN_FIRST), rng.choice(EN_LAST))
        status = rng.choices(["new", "working", "qualified", "disqualified"], [40, 35, 15, 10])[0]
        api.create("lead", {
            "first_name": first, "last_name": last, "company": company["name"], "region": company["region"],
            "email": maybe(f"{i}.lead@{company['domain']}", 0.7), "phone": maybe(company["phone"], 0.5),
            "source": rng.choice(["web", "referral", "event", "cold_call"]), "status": status,
            "disqualify_reason": "No budget" if status == "disqualified" else None,
        }, owner=REGION_OWNERS.get(company["region"], "li.manager"))
    stages, weights = list(STAGES), [share for share, _ in STAGES.values()]
    for _ in range(N_OPPORTUNITIES):
        account_id, company = rng.choice(accounts)
        stage = rng.choices(stages, weights)[0]
        # closed ones around the fixed demo date; open ones ahead of the real date (the rule checks that)
        close = TODAY + timedelta(days=rng.randint(-90, 0)) if stage in ("won", "lost") else \
            datetime.now(CST) + timedelta(days=rng.randint(2, 150))
        api.create("opportunity", {
            "name": f"{company['name'][:60]} – {rng.choice(DEALS[company['lang']])}", "account": account_id,
            "amount": f"{rng.randint(5, 500) * 1000}.00", "close_date": close.date().isoformat(), "stage": stage,
            "probability": STAGES[stage][1], "lost_reason": "Lost on price" if stage == "lost" else None,
        }, owner=company["owner"])
    for _ in range(N_TICKETS):
        contact_id, account_id, lang, owner = rng.choice(contacts)
        status = rng.choices(["new", "open", "waiting", "resolved", "closed"], [15, 30, 15, 20, 20])[0]
        opened = TODAY - timedelta(hours=rng.randint(1, 24 * 20))
        api.create("ticket", {
            "subject": rng.choice(CASES[lang]), "account": account_id, "contact": contact_id, "status": status,
            "priority": rng.choice(["low", "normal", "normal", "high"]), "opened_at": opened.isoformat(),
            "resolution": "Solved on the phone" if status in ("resolved", "closed") else None,
            "resolved_at": (opened + timedelta(hours=rng.randint(1, 48))).isoformat()
            if status in ("resolved", "closed") else None,
        }, owner="chen.service")
