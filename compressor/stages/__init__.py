"""Pre/post-processing stages that travel with a deployed model (declared in its metadata).

Each stage module holds its arithmetic once, written against an array
namespace so that numpy runtimes (and the device runner, which copies the
module) and the torch simulation compute the same thing. Stage modules import
neither torch nor the rest of the project.
"""
