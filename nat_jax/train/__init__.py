"""nat_jax.train"""
