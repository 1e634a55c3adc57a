"""atomicspi.products"""
