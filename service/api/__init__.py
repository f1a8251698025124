"""The gateway's HTTP routes: chat completions, multipart generate, operational routes, and what they share."""
