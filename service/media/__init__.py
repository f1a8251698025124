"""Media intake: fetch (data URLs, SSRF-guarded http(s)), validate and normalise images and videos.

Everything here runs on untrusted bytes and refuses with `service.errors` exceptions (4xx); nothing
here knows about SGLang beyond the encodings it hands over (PNG images, MP4 clips).
"""
