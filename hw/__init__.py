"""Hardware layer: GPIO triggers (gpiozero), the camera (picamera2 or simulated) and the clock.

Nothing here knows about the capture store or the web page; nothing touches hardware at import time.
"""
