"""PhotoGPT: the `model` and `training` fields of its manifests, its offline checks and its type record."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import Field

from reconciler.providers.provider_type import LocalProblems, ProviderType
from reconciler.values import Strict


class PhotoGPTModel(Strict):
    model_id: str = Field(min_length=1, description="the PhotoGPT model id (POST /models answers it)")


class PhotoGPTTraining(Strict):
    input_images: str = Field(
        min_length=1,
        description=(
            "glob of 12-20 image files (jpg, jpeg, webp, png, heic; at most 20 MB each), relative to the "
            "manifest's folder and inside the repository; their content is the training data"
        ),
    )


def check_local(
    model: PhotoGPTModel, training: PhotoGPTTraining, manifest_dir: Path, root: Path, reads: set[Path]
) -> LocalProblems:
    """The glob must match 12-20 distinct accepted images of at most 20 MB each, inside `root`;
    the folders looked in and the images read go into `reads`."""
    # imported here: only a run that reads PhotoGPT manifests walks images (start-up time)
    from reconciler.providers.photogpt.images import scan_images

    _, problems = scan_images(training.input_images, manifest_dir, root, reads)
    return [(("training", "input_images"), p) for p in problems]


PHOTOGPT = ProviderType(
    name="photogpt",
    model_schema=PhotoGPTModel,
    training_schema=PhotoGPTTraining,
    identity_fields=("model_id",),
    key_env="PHOTOGPT_API_KEY",
    default_base_url="https://developer.photogptai.com/api",  # [D] includes /api
    adapter="reconciler.providers.photogpt.adapter:PhotoGPTAdapter",
    #: [I] 429 "too many trainings running" has no documented number; the simulator's default is 1
    max_concurrent_trainings=1,
    requests_per_second=10.0,  # [?] no documented rate limit
    #: [D] trainings take 20-25 min and the docs poll every 5 min; never faster
    poll_interval=timedelta(minutes=5),
    min_poll_interval=timedelta(minutes=5),
    #: [D] the docs' example gives up after 35 min; no failure status is documented [?]
    training_timeout=timedelta(minutes=35),
    check_local=check_local,
    # the glob alone: the model id is not read (the adapter shares one scan per folder too)
    local_inputs=lambda _model, training: training.input_images,
)
