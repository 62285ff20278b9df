"""run() also takes request_headers, as the reference allows."""


def init():
    pass


def run(data, request_headers):
    return {"data": data, "custom": request_headers.get("X-Custom")}
