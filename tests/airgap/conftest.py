"""The airgap tests reuse the pipeline fixtures (tiny model, MedQA test file)."""

from tests.pipeline.conftest import medqa_test_path, tiny_model_dir  # noqa: F401
