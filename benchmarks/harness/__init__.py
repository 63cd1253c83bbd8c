"""What runs the app for the tests and benchmarks: a real `python app.py` server on the loopback, and
ZeroGPU's device API standing in for Hugging Face's scheduler."""
