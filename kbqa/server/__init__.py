"""The HTTP service: `create_app(settings)` in kbqa.server.app, one router per concern."""
