"""The ``Annotated`` dependency aliases of the bank's routes, read from ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.devbank.bank import Bank
from services.devbank.controls import Controls


def _bank(request: Request) -> Bank:
    bank: Bank = request.app.state.bank
    return bank


def _controls(request: Request) -> Controls:
    controls: Controls = request.app.state.controls
    return controls


BankDep = Annotated[Bank, Depends(_bank)]
ControlsDep = Annotated[Controls, Depends(_controls)]
