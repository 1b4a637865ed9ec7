"""nat_jax.deploy"""
