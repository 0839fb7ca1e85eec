import os

import pytest


@pytest.fixture(scope="session")
def toy_world():
    from toyworld.build import ToyWorld, build_toy_world

    if os.environ.get("SG_DEV_TOY"):
        return ToyWorld.load(os.environ["SG_DEV_TOY"])
    return build_toy_world(progress=False)
