"""The one task set all scenarios share: a seeded order/shipment dataset and user tasks over it
of varying depth (one to three tool calls, in one to two steps; KINDS), each with its minimal tool
plan and the facts a correct answer must state."""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TaskKind = Literal[
    "order_status", "customer_city", "parcel_hub", "compare_totals", "shipment_eta", "delivery_risk", "order_total"
]
ORDER_ID_PATTERN = r"^ORD-[0-9]{5}$"
CUSTOMER_ID_PATTERN = r"^C-[0-9]{4}$"

_FIRST = ["Ada", "Bram", "Chen", "Dana", "Emil", "Fatima", "Goran", "Hana", "Ivo", "Jun", "Kara", "Lena"]
_LAST = ["Smit", "Okafor", "Novak", "Tanaka", "Moreau", "Silva", "Jansen", "Kowalski", "Haddad", "Berg"]
_CITIES = ["Amsterdam", "Lyon", "Porto", "Gdansk", "Leipzig", "Turin", "Malmo", "Ghent"]
_ITEMS = ["keyboard", "monitor", "router", "headset", "dock", "webcam", "ssd", "cable kit"]
_CARRIERS = ["DHL", "UPS", "FedEx", "PostNL", "GLS"]
_SHIPPED = {"shipped": "in_transit", "delivered": "delivered"}
_EPOCH = dt.date(2025, 1, 6)


@dataclass(frozen=True)
class Customer:
    customer_id: str
    name: str
    email: str
    city: str


@dataclass(frozen=True)
class Order:
    order_id: str
    customer_id: str
    item: str
    quantity: int
    total: str  # decimal as text, two places
    status: str
    ordered_on: str


@dataclass(frozen=True)
class Shipment:
    order_id: str
    carrier: str
    tracking_no: str
    status: str
    eta: str


@dataclass(frozen=True)
class Dataset:
    customers: list[Customer]
    orders: list[Order]
    shipments: list[Shipment]


class Task(BaseModel):
    """A user task. Agents read only `text`; the baseline reads `kind` and the order ids."""

    model_config = ConfigDict(extra="forbid")

    task_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    kind: TaskKind
    text: str = Field(min_length=1, max_length=2000)
    order_id: str = Field(pattern=ORDER_ID_PATTERN)
    other_order_id: str | None = Field(None, pattern=ORDER_ID_PATTERN)
    expected: dict[str, str] = Field(default_factory=dict)

    @property
    def plan(self) -> tuple[tuple[str, ...], ...]:
        """The minimal tool plan (KINDS)."""
        return KINDS[self.kind].plan

    @property
    def min_tool_calls(self) -> int:
        return sum(len(step) for step in self.plan) + (self.kind == "compare_totals")


@dataclass(frozen=True)
class Kind:
    """A kind of task: how users ask it ({o}, {p}: order ids), and its minimal tool plan: the tools
    of each step, a step's tools needing only what earlier steps returned, so they may run at once."""

    templates: tuple[str, ...]
    plan: tuple[tuple[str, ...], ...]


LOGISTICS_TOOLS = ("track_parcel", "carrier_status")
"""tool-synth's tools: Agent B's in multihop, Agent A's own in simple."""
KINDS: dict[str, Kind] = {
    "order_status": Kind(
        ("What is the status of order {o}?", "Can you tell me the current status of my order {o}?"),
        (("get_order",),),
    ),
    "customer_city": Kind(
        ("Which city does the customer who placed order {o} live in?", "Where is the buyer of order {o} based?"),
        (("get_order",), ("get_customer",)),
    ),
    "parcel_hub": Kind(
        ("At which hub was the parcel of order {o} last scanned?", "Where is the parcel for order {o} right now?"),
        (("get_shipment",), ("track_parcel",)),
    ),
    "compare_totals": Kind(
        ("Which cost more, order {o} or order {p}, and what was its total?",),
        (("get_order",),),  # twice, in one step (min_tool_calls counts both)
    ),
    "shipment_eta": Kind(
        (
            "When will order {o} be delivered, and by which carrier?",
            "Which carrier is shipping order {o} and what is the estimated delivery date?",
        ),
        (("get_shipment",),),
    ),
    "delivery_risk": Kind(
        ("For order {o}: at which hub was its parcel last scanned, and which hub is its carrier's busiest right now?",),
        (("get_shipment",), ("track_parcel", "carrier_status")),
    ),
    "order_total": Kind(
        ("What was the total amount of order {o}?", "How much did I pay for order {o}?"),
        (("get_order",),),
    ),
}
"""In the order a task set cycles through them, so that even a short set mixes depths."""
NEEDS_SHIPMENT = {kind for kind, k in KINDS.items() if any("get_shipment" in step for step in k.plan)}


def hub_of(ref: str) -> str:
    """The hub tool-synth reports for `ref` ("parcel:<tracking no>", "carrier:<name>"): derived from
    the ref alone, so the controller knows the right answer without asking."""
    return f"HUB-{int(hashlib.sha256(ref.encode()).hexdigest()[:4], 16) % 97:02d}"


def make_dataset(seed: int, n_customers: int = 40, n_orders: int = 200) -> Dataset:
    rng = random.Random(f"dataset-{seed}")
    customers = [
        Customer(
            f"C-{i:04d}",
            name := f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
            f"{name.lower().replace(' ', '.')}{i}@example.org",
            rng.choice(_CITIES),
        )
        for i in range(1, n_customers + 1)
    ]
    orders, shipments = [], []
    for i in range(1, n_orders + 1):
        quantity = rng.randint(1, 4)
        ordered_on = _EPOCH + dt.timedelta(days=rng.randint(0, 60))
        status = rng.choice(["pending", "paid", "shipped", "shipped", "delivered", "cancelled"])
        order = Order(
            f"ORD-{i:05d}",
            rng.choice(customers).customer_id,
            rng.choice(_ITEMS),
            quantity,
            f"{quantity * rng.randint(1500, 45000) / 100:.2f}",
            status,
            ordered_on.isoformat(),
        )
        orders.append(order)
        if status in _SHIPPED:
            eta = ordered_on + dt.timedelta(days=rng.randint(2, 9))
            shipments.append(
                Shipment(
                    order.order_id,
                    rng.choice(_CARRIERS),
                    f"TRK{rng.randrange(10**9, 10**10)}",
                    _SHIPPED[status],
                    eta.isoformat(),
                )
            )
    return Dataset(customers, orders, shipments)


def expected_facts(
    kind: str, orders: list[Order], shipment: Shipment | None, customer: Customer | None
) -> dict[str, str]:
    """The facts a correct answer to a task of this kind states, from the records its plan reads:
    the task's orders (one, two to compare, or none where the plan reads none), the first order's
    shipment and customer. Tool-synth's hubs follow from the shipment (hub_of). The baseline answers
    from the same records."""
    if kind == "order_status":
        return {"status": orders[0].status}
    if kind == "order_total":
        return {"total": orders[0].total}
    if kind == "compare_totals":
        dearer = max(orders, key=lambda o: float(o.total))
        return {"order": dearer.order_id, "total": dearer.total}
    if kind == "customer_city":
        if customer is None:
            raise ValueError(f"order {orders[0].order_id} has no customer record")
        return {"city": customer.city}
    if shipment is None:
        raise ValueError(f"a {kind} task's order has no shipment")
    if kind == "shipment_eta":
        return {"carrier": shipment.carrier, "eta": shipment.eta}
    if kind == "parcel_hub":
        return {"parcel_hub": hub_of(f"parcel:{shipment.tracking_no}")}
    return {
        "parcel_hub": hub_of(f"parcel:{shipment.tracking_no}"),
        "carrier_hub": hub_of(f"carrier:{shipment.carrier}"),
    }


def make_tasks(seed: int, count: int, dataset: Dataset | None = None) -> list[Task]:
    """`count` tasks, the same for the same seed in every scenario, cycling through KINDS."""
    dataset = dataset or make_dataset(seed)
    shipment_of = {s.order_id: s for s in dataset.shipments}
    customer_of = {c.customer_id: c for c in dataset.customers}
    rng = random.Random(f"tasks-{seed}")
    kinds = list(KINDS)
    tasks = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        pool = [o for o in dataset.orders if o.order_id in shipment_of] if kind in NEEDS_SHIPMENT else dataset.orders
        order = rng.choice(pool)
        orders = [order]
        if kind == "compare_totals":
            orders.append(rng.choice([o for o in dataset.orders if o.total != order.total]))
        tasks.append(
            Task(
                task_id=f"s{seed}-t{i:04d}",
                kind=kind,
                order_id=order.order_id,
                other_order_id=orders[1].order_id if len(orders) > 1 else None,
                text=rng.choice(KINDS[kind].templates).format(o=order.order_id, p=orders[-1].order_id),
                expected=expected_facts(
                    kind, orders, shipment_of.get(order.order_id), customer_of.get(order.customer_id)
                ),
            )
        )
    return tasks


def render_answer(kind: str, facts: dict[str, str], order_id: str) -> str:
    """The baseline's fixed answer sentence: the expected facts, stated plainly."""
    stated = ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in facts.items())
    return f"Order {order_id} ({kind.replace('_', ' ')}): {stated}."


def answer_is_correct(task: Task, answer: str | None) -> bool:
    """True when the answer states every expected fact (case-insensitive)."""
    text = (answer or "").lower()
    return bool(task.expected) and all(value.lower() in text for value in task.expected.values())
