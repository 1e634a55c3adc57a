"""Model families: each `dataset.yaml` `model:` is one entry of `FAMILIES`, a `ModelFamily` that
tells the pipeline its model function, its guide's sites, how to set it up before training, how
to correct its draws, how to turn draws into atom positions, and its default landscape coordinate.
"""

from ._deformation import Deformation as Deformation
from ._domains import DomainMotions as DomainMotions
from ._family import FittedModel as FittedModel
from ._family import ModelFamily as ModelFamily
from ._family import ModelSetup as ModelSetup
from ._homogeneous import Homogeneous as Homogeneous
from ._nma import NormalModes as NormalModes
from ._volume import Volume as Volume

FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (NormalModes(), Deformation(), DomainMotions(), Homogeneous(), Volume())}
