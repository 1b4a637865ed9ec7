"""nat_jax.space"""
