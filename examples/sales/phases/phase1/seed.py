"""Phase-1 data of the Loom Sales phases: 36 accounts and 48 contacts as they came from the old spreadsheet.

The spreadsheet's industry column is free text, written differently by everyone ("Banking", "bank",
"银行"...): phase 2 maps each of these onto one option (``map:`` under ``account.industry``). A third
of the contacts have no preferred language yet: phase 3 makes it required and fills it in (``backfill:``).
Deterministic (one ``random.Random``), stdlib only; ``loom seed`` calls ``seed(api)``.
"""

from __future__ import annotations

import random

#: Every spelling of an industry the old spreadsheet holds; None: left empty.
INDUSTRY_TEXTS = ["Banking", "bank", "Finance", "Insurance", "银行", "Retail", "retail trade", "Wholesale", "零售",
                  "Software", "IT", "Tech", "Manufacturing", "Machinery", "制造业", "logistics", "Freight",
                  "Hospital", "Pharma", None]
#: (name, city, region, office phone); Chinese companies first.
COMPANIES = [
    ("上海明辉贸易有限公司", "上海", "east", "+86 21 6123 4567"),
    ("北京华信科技有限公司", "北京", "north", "+86 10 8523 1100"),
    ("深圳瑞达电子有限公司", "深圳", "south", "+86 755 2691 3300"),
    ("杭州恒源软件有限公司", "杭州", "east", "+86 571 8702 5566"),
    ("成都宏泰物流有限公司", "成都", "west", "+86 28 8554 7788"),
    ("南京嘉盛机械有限公司", "南京", "east", "+86 25 8331 2200"),
    ("天津康博医疗器械有限公司", "天津", "north", "+86 22 2341 9900"),
    ("广州金远商贸有限公司", "广州", "south", "+86 20 3812 4455"),
    ("重庆安创新能源有限公司", "重庆", "west", "+86 23 6378 1212"),
    ("西安博信投资有限公司", "西安", "west", "+86 29 8820 6633"),
    ("苏州明达精密制造有限公司", "苏州", "east", "+86 512 6589 0011"),
    ("宁波泰华外贸有限公司", "宁波", "east", "+86 574 8712 3344"),
    ("武汉信源软件有限公司", "武汉", "west", "+86 27 8756 2299"),
    ("青岛恒盛物流有限公司", "青岛", "north", "+86 532 8090 7755"),
    ("厦门瑞康医药有限公司", "厦门", "south", "+86 592 512 3880"),
    ("长沙宏达机械有限公司", "长沙", "south", "+86 731 8456 1177"),
    ("郑州嘉信银行服务有限公司", "郑州", "north", "+86 371 6552 9090"),
    ("合肥金泰科技有限公司", "合肥", "east", "+86 551 6288 3030"),
    ("Northwind Logistics Ltd", "London", "overseas", "+44 20 7946 0123"),
    ("Blue Harbor Foods plc", "Manchester", "overseas", "+44 161 496 0456"),
    ("Summit Systems GmbH", "Berlin", "overseas", "+49 30 2345 6789"),
    ("Redwood Capital Inc.", "New York", "overseas", "+1 212 555 0142"),
    ("Silverline Software LLC", "San Francisco", "overseas", "+1 415 555 0177"),
    ("Crescent Health Inc.", "Toronto", "overseas", "+1 416 555 0133"),
    ("Ironbridge Manufacturing Pty Ltd", "Sydney", "overseas", "+61 2 5550 1234"),
    ("Evergreen Retail Pte. Ltd.", "Singapore", "overseas", "+65 6212 3456"),
    ("Brightwater Freight Ltd", "London", "overseas", "+44 20 7946 0987"),
    ("Oakfield Insurance plc", "Manchester", "overseas", "+44 161 496 0321"),
    ("Highland Machinery GmbH", "Berlin", "overseas", "+49 30 2987 6543"),
    ("Pioneer Pharma Inc.", "New York", "overseas", "+1 212 555 0188"),
    ("Granite Tech LLC", "San Francisco", "overseas", "+1 415 555 0111"),
    ("Maple Wholesale Inc.", "Toronto", "overseas", "+1 416 555 0199"),
    ("Atlas Banking Services Pty Ltd", "Sydney", "overseas", "+61 2 5550 9876"),
    ("Cobalt IT Pte. Ltd.", "Singapore", "overseas", "+65 6298 7654"),
    ("Horizon Hospital Supplies Ltd", "London", "overseas", "+44 20 7946 0555"),
    ("Sterling Trade GmbH", "Berlin", "overseas", "+49 30 2111 2222"),
]
ZH_PEOPLE = [("伟", "王"), ("芳", "李"), ("娜", "张"), ("敏", "刘"), ("静", "陈"), ("强", "杨"), ("磊", "黄"),
             ("军", "赵"), ("洋", "吴"), ("艳", "周"), ("杰", "徐"), ("涛", "孙")]
EN_PEOPLE = [("James", "Smith"), ("Emma", "Brown"), ("Oliver", "Taylor"), ("Sophie", "Wilson"),
             ("Lucas", "Müller"), ("Mia", "Schmidt"), ("Noah", "Johnson"), ("Ava", "Williams"),
             ("Liam", "Martin"), ("Chloe", "Lee"), ("Ethan", "Clark"), ("Grace", "Walker")]
TITLES = {"zh": ["总经理", "采购经理", "财务经理", "技术总监"], "en": ["CEO", "Head of Purchasing", "CFO", "CTO"]}

#: Demo sign-ins (this example only: a real project never ships passwords).
DEMO_PASSWORD = "loom-demo-2026"
DEMO_USERS = [  # username, full name, email, role, region
    ("admin", "Ada Admin", "admin@loom-sales.example.com", "admin", None),
    ("li.manager", "李娜", "li.na@loom-sales.example.com", "sales_manager", "east"),
    ("zhang.rep", "张伟", "zhang.wei@loom-sales.example.com", "sales_rep", "east"),
    ("smith.rep", "John Smith", "john.smith@loom-sales.example.com", "sales_rep", "overseas"),
]
REGION_OWNERS = {"east": "zhang.rep", "overseas": "smith.rep"}  # the rest belong to the manager


def seed(api) -> None:
    rng = random.Random(20260301)
    for username, name, email, role, region in DEMO_USERS:
        api.users.create(username, DEMO_PASSWORD, name=name, email=email, roles=[role],
                         **({"region": region} if region else {}))
    api.users.create_team("sales", manager="li.manager")
    for username in ("zhang.rep", "smith.rep"):
        api.users.add_member("sales", username)

    accounts = []  # (id, language, owner, domain)
    for i, (name, city, region, phone) in enumerate(COMPANIES):
        lang = "zh" if i < 18 else "en"
        owner = REGION_OWNERS.get(region, "li.manager")
        domain = f"a{i + 1}.example.{'cn' if lang == 'zh' else 'com'}"
        record = api.create("account", {
            "name": name, "industry": INDUSTRY_TEXTS[i % len(INDUSTRY_TEXTS)], "city": city, "region": region,
            "phone": phone, "website": f"https://www.{domain}",
            "type": ("prospect", "customer", "partner")[i % 3],
            "revenue": None if i % 7 == 3 else f"{rng.randint(50, 9000) * 10000}.00",
            "employees": None if i % 5 == 4 else rng.randint(10, 5000),
        }, owner=owner)
        accounts.append((record["id"], lang, owner, domain))

    for i in range(48):
        account_id, lang, owner, domain = accounts[i % len(accounts)] if i % 12 != 11 else (None, "en", "li.manager",
                                                                                             "example.org")
        first, last = (ZH_PEOPLE if lang == "zh" else EN_PEOPLE)[i % 12]
        mobile = (f"+86 139 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}" if lang == "zh"
                  else f"+44 7400 {rng.randint(100000, 999999)}") if i % 4 != 2 else None
        api.create("contact", {
            "first_name": first, "last_name": last, "account": account_id, "title": rng.choice(TITLES[lang]),
            "email": f"contact{i + 1}@{domain}", "mobile": mobile,
            "preferred_language": None if i % 3 == 0 else lang,  # phase 3 fills the missing ones
            "do_not_call": i % 10 == 9,
        }, owner=owner)
