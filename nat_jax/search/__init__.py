"""nat_jax.search"""
