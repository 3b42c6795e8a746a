"""The test suite. Tests import from the packages' public surfaces (`from exdd_core.scoring import ExddModel`,
each package's `__all__`); a test that imports a module directly (`exdd_core.banks.pruned`,
`exdd_core.synth.run`, ...) tests that module's own parts - private helpers and kernels that are not on the
package's surface - against a reference, and says so by that import."""
