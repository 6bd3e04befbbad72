"""Ask the model server for predictions on held-out digits and compare with the true labels.

    python query.py http://127.0.0.1:PORT MODEL_NAME
"""

from __future__ import annotations

import json
import sys
import urllib.request

from train import split


def main() -> None:
    url, name = sys.argv[1].rstrip("/"), sys.argv[2]
    _, x_test, _, y_test = split()
    request = {"inputs": [{"name": "X", "shape": list(x_test.shape), "datatype": "FP32",
                           "data": x_test.flatten().tolist()}]}
    http_request = urllib.request.Request(f"{url}/v2/models/{name}/infer", data=json.dumps(request).encode(),
                                          headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(http_request, timeout=60) as response:
        answer = json.load(response)
    label = next(o for o in answer["outputs"] if o["name"] == "label")
    predictions = [int(v) for v in label["data"]]
    print(f"{'image':>5}  {'true':>4}  {'predicted':>9}")
    for i in range(12):
        mark = "" if predictions[i] == y_test[i] else "  <- wrong"
        print(f"{i:>5}  {y_test[i]:>4}  {predictions[i]:>9}{mark}")
    correct = sum(int(p == t) for p, t in zip(predictions, y_test, strict=True))
    print(f"accuracy from the model server: {correct}/{len(y_test)} = {correct / len(y_test):.4f}")
    if correct / len(y_test) < 0.9:
        sys.exit("the served model is far less accurate than the trained one")


if __name__ == "__main__":
    main()
