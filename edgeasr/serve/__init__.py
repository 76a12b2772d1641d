"""Serving: the streaming websocket server, its client, and the browser demo page."""
