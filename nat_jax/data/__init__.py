"""nat_jax.data"""
