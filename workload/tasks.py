"""The one task set all scenarios share: a seeded order/shipment dataset and user tasks
over it, each with the facts a correct answer must state."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TaskKind = Literal["order_status", "order_total", "shipment_eta"]
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
    """A user task. Agents read only `text`; the baseline reads `kind` and `order_id`."""

    model_config = ConfigDict(extra="forbid")

    task_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    kind: TaskKind
    text: str = Field(min_length=1, max_length=2000)
    order_id: str = Field(pattern=ORDER_ID_PATTERN)
    expected: dict[str, str] = Field(default_factory=dict)


_TEMPLATES: dict[str, list[str]] = {
    "order_status": ["What is the status of order {o}?", "Can you tell me the current status of my order {o}?"],
    "order_total": ["What was the total amount of order {o}?", "How much did I pay for order {o}?"],
    "shipment_eta": [
        "When will order {o} be delivered, and by which carrier?",
        "Which carrier is shipping order {o} and what is the estimated delivery date?",
    ],
}


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


def expected_facts(kind: str, order: Order, shipment: Shipment | None) -> dict[str, str]:
    """The facts a correct answer to a task of this kind states."""
    if kind == "order_status":
        return {"status": order.status}
    if kind == "order_total":
        return {"total": order.total}
    if shipment is None:
        raise ValueError(f"order {order.order_id} has no shipment")
    return {"carrier": shipment.carrier, "eta": shipment.eta}


def make_tasks(seed: int, count: int, dataset: Dataset | None = None) -> list[Task]:
    """`count` tasks, the same for the same seed in every scenario."""
    dataset = dataset or make_dataset(seed)
    shipment_of = {s.order_id: s for s in dataset.shipments}
    rng = random.Random(f"tasks-{seed}")
    kinds: list[TaskKind] = ["order_status", "order_total", "shipment_eta"]
    tasks = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        pool = [o for o in dataset.orders if o.order_id in shipment_of] if kind == "shipment_eta" else dataset.orders
        order = rng.choice(pool)
        tasks.append(
            Task(
                task_id=f"s{seed}-t{i:04d}",
                kind=kind,
                order_id=order.order_id,
                text=rng.choice(_TEMPLATES[kind]).format(o=order.order_id),
                expected=expected_facts(kind, order, shipment_of.get(order.order_id)),
            )
        )
    return tasks


def render_answer(kind: str, facts: dict[str, str], order_id: str) -> str:
    """The baseline's fixed answer sentence."""
    if kind == "order_status":
        return f"Order {order_id} is {facts['status']}."
    if kind == "order_total":
        return f"The total amount of order {order_id} was {facts['total']} EUR."
    return f"Order {order_id} ships with {facts['carrier']} and is expected on {facts['eta']}."


def answer_is_correct(task: Task, answer: str | None) -> bool:
    """True when the answer states every expected fact (case-insensitive)."""
    text = (answer or "").lower()
    return bool(task.expected) and all(value.lower() in text for value in task.expected.values())
