"""Circuits: the Native Gate IR an executor receives, and the OpenQASM subset lowered to it."""
