"""initial zoo schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('crawl_state',
    sa.Column('query_key', sa.String(length=64), nullable=False),
    sa.Column('endpoint', sa.String(length=512), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('next_url', sa.Text(), nullable=True),
    sa.Column('pages_done', sa.Integer(), nullable=False),
    sa.Column('items_done', sa.Integer(), nullable=False),
    sa.Column('finished', sa.Boolean(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('query_key')
    )
    op.create_table('edges',
    sa.Column('child_id', sa.String(length=256), nullable=False),
    sa.Column('parent_id', sa.String(length=256), nullable=False),
    sa.Column('relation', sa.String(length=16), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('observed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('child_id', 'parent_id', 'relation', 'source')
    )
    with op.batch_alter_table('edges', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_edges_parent_id'), ['parent_id'], unique=False)

    op.create_table('models',
    sa.Column('repo_id', sa.String(length=256), nullable=False),
    sa.Column('sha', sa.String(length=64), nullable=True),
    sa.Column('last_modified', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('author', sa.String(length=128), nullable=True),
    sa.Column('library_name', sa.String(length=64), nullable=True),
    sa.Column('pipeline_tag', sa.String(length=64), nullable=True),
    sa.Column('tags', sa.JSON(), nullable=True),
    sa.Column('card_data', sa.JSON(), nullable=True),
    sa.Column('datasets', sa.JSON(), nullable=True),
    sa.Column('license', sa.String(length=64), nullable=True),
    sa.Column('gated', sa.String(length=16), nullable=True),
    sa.Column('private', sa.Boolean(), nullable=True),
    sa.Column('downloads', sa.Integer(), nullable=True),
    sa.Column('likes', sa.Integer(), nullable=True),
    sa.Column('config', sa.JSON(), nullable=True),
    sa.Column('is_adapter', sa.Boolean(), nullable=False),
    sa.Column('is_quantized', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('enriched_sha', sa.String(length=64), nullable=True),
    sa.Column('first_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('repo_id')
    )
    op.create_table('targets',
    sa.Column('target_id', sa.String(length=64), nullable=False),
    sa.Column('base_id', sa.String(length=256), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('calib_sha', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('target_id')
    )
    with op.batch_alter_table('targets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_targets_base_id'), ['base_id'], unique=False)

    op.create_table('adapter_configs',
    sa.Column('repo_id', sa.String(length=256), nullable=False),
    sa.Column('sha', sa.String(length=64), nullable=True),
    sa.Column('peft_type', sa.String(length=32), nullable=True),
    sa.Column('r', sa.Integer(), nullable=True),
    sa.Column('lora_alpha', sa.Float(), nullable=True),
    sa.Column('target_modules', sa.JSON(), nullable=True),
    sa.Column('base_model_name_or_path', sa.String(length=256), nullable=True),
    sa.Column('task_type', sa.String(length=64), nullable=True),
    sa.Column('raw', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['repo_id'], ['models.repo_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('repo_id')
    )
    op.create_table('merge_runs',
    sa.Column('run_id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('target_id', sa.String(length=64), nullable=True),
    sa.Column('method', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('inputs', sa.JSON(), nullable=False),
    sa.Column('pool', sa.JSON(), nullable=False),
    sa.Column('picks', sa.JSON(), nullable=True),
    sa.Column('output', sa.Text(), nullable=True),
    sa.Column('details', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['target_id'], ['targets.target_id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('run_id')
    )
    op.create_table('scores',
    sa.Column('target_id', sa.String(length=64), nullable=False),
    sa.Column('repo_id', sa.String(length=256), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('compatible', sa.Boolean(), nullable=True),
    sa.Column('components', sa.JSON(), nullable=False),
    sa.Column('scorer_version', sa.String(length=16), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['target_id'], ['targets.target_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('target_id', 'repo_id')
    )
    op.create_table('tensor_fingerprints',
    sa.Column('repo_id', sa.String(length=256), nullable=False),
    sa.Column('sha', sa.String(length=64), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('n_tensors', sa.Integer(), nullable=False),
    sa.Column('n_params', sa.Integer(), nullable=False),
    sa.Column('tensors', sa.JSON(), nullable=False),
    sa.Column('shape_hash', sa.String(length=64), nullable=False),
    sa.Column('body_hash', sa.String(length=64), nullable=False),
    sa.Column('vocab_size', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['repo_id'], ['models.repo_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('repo_id')
    )
    with op.batch_alter_table('tensor_fingerprints', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tensor_fingerprints_body_hash'), ['body_hash'], unique=False)
        batch_op.create_index(batch_op.f('ix_tensor_fingerprints_shape_hash'), ['shape_hash'], unique=False)

    op.create_table('weight_files',
    sa.Column('repo_id', sa.String(length=256), nullable=False),
    sa.Column('filename', sa.String(length=512), nullable=False),
    sa.Column('sha', sa.String(length=64), nullable=True),
    sa.Column('n_tensors', sa.Integer(), nullable=False),
    sa.Column('params_by_dtype', sa.JSON(), nullable=False),
    sa.Column('metadata', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['repo_id'], ['models.repo_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('repo_id', 'filename')
    )


def downgrade() -> None:
    op.drop_table('weight_files')
    with op.batch_alter_table('tensor_fingerprints', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tensor_fingerprints_shape_hash'))
        batch_op.drop_index(batch_op.f('ix_tensor_fingerprints_body_hash'))

    op.drop_table('tensor_fingerprints')
    op.drop_table('scores')
    op.drop_table('merge_runs')
    op.drop_table('adapter_configs')
    with op.batch_alter_table('targets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_targets_base_id'))

    op.drop_table('targets')
    op.drop_table('models')
    with op.batch_alter_table('edges', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_edges_parent_id'))

    op.drop_table('edges')
    op.drop_table('crawl_state')
