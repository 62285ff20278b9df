"""The benchmark's trivial model on LitServe (one API server, one inference worker).

python litserve_app.py PORT      (POST /predict with {"data": [[...]]} -> [55])
"""

import sys

import litserve as ls


class SumAPI(ls.LitAPI):
    def setup(self, device):
        pass

    def decode_request(self, request):
        return request["data"]

    def predict(self, rows):
        return [sum(row) for row in rows]

    def encode_response(self, output):
        return output


if __name__ == "__main__":
    server = ls.LitServer(SumAPI(), accelerator="cpu", workers_per_device=1)
    server.run(
        host="127.0.0.1", port=int(sys.argv[1]), num_api_servers=1, log_level="warning", generate_client_file=False
    )
