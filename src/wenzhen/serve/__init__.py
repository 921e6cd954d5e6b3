"""Serving: the Gradio consultation UI (`wenzhen web`), the OpenAI-compatible API (`wenzhen api`) and their tools."""
