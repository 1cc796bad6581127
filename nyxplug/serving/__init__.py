"""Serving frames to other processes and hosts: who may connect and send what.

``nyxplug.serving.policy`` is the per-peer hook both listeners call when a connection is
made; ``nyxplug.serving.security`` implements it with TLS 1.3, mutual TLS, an access list
and a per-peer rate limit.
"""
