"""@rawhttp: run() gets the request and answers with its own status and headers."""

from azureml.contrib.services.aml_request import rawhttp
from azureml.contrib.services.aml_response import AMLResponse


def init():
    pass


@rawhttp
def run(request):
    if request.method == "GET":
        return {"method": "GET", "args": dict(request.args), "path": request.path, "full_path": request.full_path}
    body = request.get_data(as_text=True)
    if body == "teapot":
        return AMLResponse("short and stout", 418, {"X-Custom": "a, b"})
    if body == "json":
        return AMLResponse({"made": "json"}, 201, json_str=True)
    if body == "none":
        return AMLResponse(None, 202)
    if body == "fail":
        return AMLResponse("it broke", 503)
    return {
        "json": request.get_json(silent=True),
        "content_type": request.headers.get("Content-Type"),
        "length": len(request.data),
    }
