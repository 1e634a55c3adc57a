"""Reading and writing the field's files: particle stacks, RELION STAR, cryoSPARC .cs, cryoDRGN pickles."""

from ._errors import InputError as InputError
