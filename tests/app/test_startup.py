"""`python app.py` on a fresh checkout starts and answers on the embedded defaults."""

import json
import urllib.request


def test_app_answers_its_api_info(app_url):
    with urllib.request.urlopen(f"{app_url}/gradio_api/info", timeout=10) as response:
        info = json.loads(response.read())
    endpoints = set(info["named_endpoints"])
    assert {"/generate_text", "/generate_image", "/metrics", "/models", "/compile_status"} <= endpoints
