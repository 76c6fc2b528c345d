"""Test doubles (never a product mode): a scripted engine behind ``engine.interface``."""
