from . import models
from . import utils
