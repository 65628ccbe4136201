"""probes: candidates' alignment with a target's gradient; targets name their gradient

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('probes',
    sa.Column('repo_id', sa.String(length=256), nullable=False),
    sa.Column('sha', sa.String(length=64), nullable=False),
    sa.Column('gradient_key', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('cosines', sa.JSON(), nullable=False),
    sa.Column('tensors', sa.JSON(), nullable=False),
    sa.Column('bytes_read', sa.Integer(), nullable=False),
    sa.Column('full_bytes', sa.Integer(), nullable=True),
    sa.Column('calls', sa.Integer(), nullable=False),
    sa.Column('seconds', sa.Float(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('probed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('repo_id', 'sha', 'gradient_key')
    )
    with op.batch_alter_table('probes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_probes_gradient_key'), ['gradient_key'], unique=False)
    with op.batch_alter_table('targets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('gradient_key', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('targets', schema=None) as batch_op:
        batch_op.drop_column('gradient_key')
    with op.batch_alter_table('probes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_probes_gradient_key'))
    op.drop_table('probes')
