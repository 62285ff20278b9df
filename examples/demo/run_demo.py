"""The modelfleet demo: train, register, deploy to the local cluster, score with a key.

    python examples/demo/run_demo.py [WORKSPACE_FOLDER]

Leaves the service running; the last lines print its URI, a curl command and how to stop.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path

from modelfleet import AksWebservice, Environment, InferenceConfig, Model, Workspace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from train import train  # noqa: E402  (the demo's own training script, beside this file)

SAMPLE = {"data": [[0.038, 0.051, 0.062, 0.022, -0.044, -0.035, -0.043, -0.003, 0.020, -0.018]]}


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-workspace").resolve()
    ws = Workspace.create("demo", root, exist_ok=True)
    print(f"workspace: {ws.path}")

    model_file = train(root / "outputs")
    model = Model.register(ws, model_path=model_file, model_name="diabetes-ridge", tags={"algorithm": "ridge"})
    print(f"registered model {model.name}:{model.version}")

    inference_config = InferenceConfig(
        entry_script="score.py", source_directory=HERE, environment=Environment("demo-env")
    )
    deployment_config = AksWebservice.deploy_configuration(cpu_cores=0.5, memory_gb=1, num_replicas=1)
    started = time.monotonic()
    service = Model.deploy(ws, "diabetes", [model], inference_config, deployment_config, overwrite=True)
    service.wait_for_deployment(show_output=True)
    print(f"deployed in {time.monotonic() - started:.1f} s; state {service.state}")

    primary_key, _ = service.get_keys()
    request = urllib.request.Request(
        service.scoring_uri,
        data=json.dumps(SAMPLE).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {primary_key}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    print(f"prediction through the router with the primary key: {answer}")
    print(f"prediction through service.run(): {service.run(json.dumps(SAMPLE))}")
    print()
    print(f"scoring URI: {service.scoring_uri}")
    print(f"swagger URI: {service.swagger_uri}")
    cli = Path(sys.executable).parent / "modelfleet"
    print("try it:")
    print(f"  curl -s -H 'Authorization: Bearer '$({cli} -w {root} service get-keys -n diabetes | head -1) \\")
    print(f"       -H 'Content-Type: application/json' -d '{json.dumps(SAMPLE)}' {service.scoring_uri}")
    print(f"stop the cluster: {cli} -w {root} cluster stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
