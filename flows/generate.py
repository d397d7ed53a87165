"""The generate flow: draw images from a run's generators, score them, publish a dataset version."""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from cci_core.store.store import Store
from flows import naming
from flows.common import artifact_key, fig, file_link, png_markdown
from flows.runtime import gpu_annotation
from flows.settings import GenerateSettings
from tasks.common import asset_for
from tasks.generate import generate_task, sample_grid_task


@flow(name="cci-generate", log_prints=True, flow_run_name=naming.generate_name)
def generate_flow(settings: GenerateSettings) -> dict:
    """Publish ``per_cluster`` generated images for every cluster of the run as a new version of the dataset."""
    s = settings
    run_id, dataset = s.run_id, s.dataset
    store = Store(s.store_root)
    with gpu_annotation():
        out = generate_task.with_options(assets=[asset_for("dataset", dataset)],
                                         asset_deps=[asset_for("clustering", run_id)]).submit(
            str(store.root), run_id, dataset, s.per_cluster, s.threshold, s.seed, s.models).result()
    get_run_logger().info("Published %s v%d: %d images, %d accepted", dataset, out["version"], out["n_images"],
                          out["accepted"])
    grid = sample_grid_task.submit(str(store.root), out).result()
    create_table_artifact(key=artifact_key("dataset", dataset),
                          table=[{"cluster": c, "acceptance": fig(a)}
                                 for c, a in out["acceptance_by_cluster"].items()],
                          description=f"{dataset} v{out['version']}: share of images the classifier accepts")
    create_markdown_artifact(
        key=artifact_key("dataset-summary", dataset), description=f"dataset {dataset} v{out['version']}",
        markdown=f"# Dataset `{dataset}` v{out['version']}\n\n- images: {out['n_images']} ({out['accepted']} "
                 f"accepted by the {out['classifier']})\n- from run `{run_id}` ({out['models']} generators)\n"
                 f"- folder: {file_link(out['path'])}\n- lineage: `cci lineage show {out['artifact_id']}`\n\n"
                 + png_markdown(grid, "generated images, one row per cluster"))
    out["sample_grid"] = grid
    return out
