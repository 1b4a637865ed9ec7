"""nat_jax.runtime"""
