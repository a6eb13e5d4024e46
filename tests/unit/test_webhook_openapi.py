"""The OpenAPI 3.1 document describes the webhook requests under `webhooks`, from the body structs."""

from __future__ import annotations

from supervisor.http.openapi import openapi_document


def test_both_events_are_documented_with_the_body_and_the_signature_headers() -> None:
    doc = openapi_document()
    assert doc["openapi"] == "3.1.0"
    assert set(doc["webhooks"]) == {"export.completed", "export.failed"}
    for event in doc["webhooks"].values():
        post = event["post"]
        body = post["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/WebhookBody"}
        headers = {p["name"] for p in post["parameters"] if p["in"] == "header"}
        assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}
        assert {"2XX", "410", "default"} <= set(post["responses"])
    schemas = doc["components"]["schemas"]
    assert set(schemas["WebhookBody"]["required"]) == {"type", "timestamp", "data"}
    data = set(schemas["WebhookData"]["properties"])
    assert {"id", "status", "format", "size_bytes", "file_url", "file_url_expires_at",
            "error_category", "error_message"} <= data
    create = schemas["JobCreate"]["properties"]
    assert "webhook_url" in create
    assert {"webhook_url", "webhooks"} <= set(schemas["Job"]["properties"])
    assert set(schemas["WebhookStatus"]["enum"]) == {"pending", "delivered", "disabled", "failed"}
    assert set(schemas["WebhookEvent"]["enum"]) == {"export.completed", "export.failed"}
