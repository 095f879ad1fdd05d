"""Wharf's benchmark harness: Wharf, mosquitto and amqtt side by side, interleaved, on 127.0.0.1.

Run it with ``python -m bench`` (or ``python bench/run.py``); ``--help`` lists the scenarios and flags.
"""
