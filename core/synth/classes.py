"""The Cityscapes label ids that the renderer writes into the label map.

They are the regular ids (as in cityscapesscripts.helpers.labels), not the train ids:
`core.labels.CITYSCAPES` maps them to train ids, as it does for real Cityscapes labels. The
comments name the Cityscapes category of each group.
"""

# void: the hood of the car carrying the camera, which Cityscapes ignores in training
EGO_VEHICLE = 1
# flat
ROAD = 7
SIDEWALK = 8
# construction
BUILDING = 11
WALL = 12
FENCE = 13
# object
POLE = 17
TRAFFIC_LIGHT = 19
TRAFFIC_SIGN = 20
# nature
VEGETATION = 21
TERRAIN = 22
# sky
SKY = 23
# human
PERSON = 24
RIDER = 25
# vehicle
CAR = 26
TRUCK = 27
BUS = 28
TRAIN = 31
MOTORCYCLE = 32
BICYCLE = 33
