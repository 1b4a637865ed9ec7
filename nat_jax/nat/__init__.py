"""nat_jax.nat"""
