"""``/v1/webhook-endpoints``: a caller's webhook endpoints and their delivery log
(issue 14; services/payment/webhooks.py). Another caller's endpoint is 404. No
``from __future__ import annotations``: FastAPI resolves the signatures at runtime."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from services.payment.deps import CallerDep
from services.payment.webhooks import (
    WebhookDeliveryListPublic,
    WebhookDeliveryPublic,
    WebhookEndpointCreate,
    WebhookEndpointListPublic,
    WebhookEndpointPublic,
    WebhookEndpoints,
)

_ERROR = {"description": "the error object"}
router = APIRouter(
    prefix="/v1/webhook-endpoints",
    tags=["webhooks"],
    responses={400: _ERROR, 401: _ERROR, 403: _ERROR, 404: _ERROR},
)


def _endpoints(request: Request) -> WebhookEndpoints:
    endpoints: WebhookEndpoints = request.app.state.webhooks
    return endpoints


EndpointsDep = Annotated[WebhookEndpoints, Depends(_endpoints)]
_ONE: dict[str, Any] = {"response_model": WebhookEndpointPublic}


@router.post(
    "",
    status_code=201,
    summary="Register an endpoint; its signing secret (whsec_…) is shown only here",
    **_ONE,
)
async def create_endpoint(
    caller: CallerDep, body: WebhookEndpointCreate, endpoints: EndpointsDep
) -> WebhookEndpointPublic:
    return await endpoints.create(caller, body)


@router.get("", response_model=WebhookEndpointListPublic, summary="The caller's endpoints")
async def list_endpoints(caller: CallerDep, endpoints: EndpointsDep) -> WebhookEndpointListPublic:
    return await endpoints.list_for(caller)


@router.get("/{endpoint_id}", summary="One endpoint", **_ONE)
async def get_endpoint(
    endpoint_id: str, caller: CallerDep, endpoints: EndpointsDep
) -> WebhookEndpointPublic:
    return await endpoints.view(caller, endpoint_id)


@router.delete("/{endpoint_id}", summary="Delete an endpoint (nothing more is sent)", **_ONE)
async def delete_endpoint(
    endpoint_id: str, caller: CallerDep, endpoints: EndpointsDep
) -> WebhookEndpointPublic:
    return await endpoints.delete(caller, endpoint_id)


@router.post(
    "/{endpoint_id}/rotate-secret",
    summary="A new secret (shown once); the old one also signs for the overlap (24 h)",
    **_ONE,
)
async def rotate_secret(
    endpoint_id: str, caller: CallerDep, endpoints: EndpointsDep
) -> WebhookEndpointPublic:
    return await endpoints.rotate(caller, endpoint_id)


@router.post(
    "/{endpoint_id}/enable",
    summary="Enable a disabled endpoint; its pending deliveries go out again",
    **_ONE,
)
async def enable_endpoint(
    endpoint_id: str, caller: CallerDep, endpoints: EndpointsDep
) -> WebhookEndpointPublic:
    return await endpoints.enable(caller, endpoint_id)


@router.get(
    "/{endpoint_id}/deliveries",
    response_model=WebhookDeliveryListPublic,
    summary="The endpoint's delivery log, newest first",
)
async def list_deliveries(
    endpoint_id: str,
    caller: CallerDep,
    endpoints: EndpointsDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    starting_after: Annotated[str | None, Query(max_length=64)] = None,
) -> WebhookDeliveryListPublic:
    return await endpoints.deliveries(
        caller, endpoint_id, limit=limit, starting_after=starting_after
    )


@router.post(
    "/{endpoint_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=WebhookDeliveryPublic,
    summary="Send a delivery's event again (same webhook-id)",
)
async def redeliver(
    endpoint_id: str, delivery_id: str, caller: CallerDep, endpoints: EndpointsDep
) -> WebhookDeliveryPublic:
    return await endpoints.redeliver(caller, endpoint_id, delivery_id)
