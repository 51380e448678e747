"""The main job (``conveyor demo``): the whole pipeline on a generated card-fraud dataset."""
