def serve_ui(handler: object) -> bool:
    return False
