"""GET /v1/models and /v1/models/{id}: every expert and every ensemble of the spec."""

from fastapi import APIRouter

from gateway.api.deps import AuthDep, HolderDep, ServingDep
from gateway.api.protocol import ModelCard, ModelList
from gateway.errors import ModelNotFoundError, NotReadyError
from gateway.executors.base import Executor

router = APIRouter(dependencies=[AuthDep])


def _card(ex: Executor) -> ModelCard:
    experts = ex.experts()
    return ModelCard(
        id=ex.name,
        max_model_len=ex.max_model_len(),
        kind=ex.kind,
        description=experts[0].description if ex.kind == "expert" and experts else "",
        experts=[e.name for e in experts],
        cost=experts[0].cost if ex.kind == "expert" and experts else None,
    )


@router.get("/v1/models")
async def list_models(holder: HolderDep) -> ModelList:
    if holder.runtime is None:
        raise NotReadyError("The gateway is still loading its models.")
    return ModelList(data=[_card(ex) for ex in holder.runtime.executors.values()])


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, serving: ServingDep) -> ModelCard:
    try:
        return _card(serving.executor(model_id))
    except ModelNotFoundError:
        raise ModelNotFoundError(f"The model `{model_id}` does not exist.", param="model") from None
