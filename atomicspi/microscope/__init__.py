"""atomicspi.microscope"""
